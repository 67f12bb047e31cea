"""Security core (issue 17): SASL mechanisms, the per-connection SASL state machine, principals, SCRAM credentials and
the ACL authorizer. Everything here is sans-I/O: the connection feeds bytes in and writes what comes out; stores,
clocks and key sets are injected."""
