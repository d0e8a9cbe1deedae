"""What an operator sees of the running service: metrics (``metrics``), the access line and
request ids (``requests``), the events with a line of their own (``events``)."""
