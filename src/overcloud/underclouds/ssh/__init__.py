"""The ssh UnderCloud: remote hosts driven over SSH (see docs/remote-hosts.md).

Imports nothing: the host bundle imports this package on hosts that have only the standard
library, pyroute2 and supervisor."""
