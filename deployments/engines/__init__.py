"""One module per engine. Generation and embedding engines implement the Protocols in
contract/engine.py; the sequence classifiers (classifiers.py) have no Protocol of their own:
deployments/tasks/sequence_scoring.py is their one caller."""
