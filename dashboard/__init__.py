"""The dashboard: a Flask app serving the team UI and the REST API."""
