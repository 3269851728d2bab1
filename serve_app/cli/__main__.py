from serve_app.cli.main import main

main()
