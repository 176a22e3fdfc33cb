"""opsctl: the operations platform from the command line, through its REST API."""
