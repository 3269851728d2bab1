"""One module per engine; all behind the Protocols in base.py."""
