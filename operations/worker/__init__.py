"""The process-level code of a worker node: running an operation's task
(`runner`), leases and heartbeats, the node's registration, the supervisor
that `runworkers` and `runplatform` run, and the brokers' transports."""
