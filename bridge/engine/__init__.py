"""The sync engine: observations in (sync), writes out (outbox), polling with deletion
inference (poller), webhooks through the inbox (inbox), comments, leases. Nothing here knows a
platform by name: connectors are reached only through connectors.base.Connector."""
