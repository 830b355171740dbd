"""Every tunable default of the engine, named once. The config schema (`bridge.config`), the
worker's settings and the daemon's options all read them from here, so a default changed here
is changed everywhere and documented in `config.example.yaml` beside its key."""

from __future__ import annotations

# workers: (config keys)
DEFAULT_CONCURRENCY = 8  # outbox writes at the platforms at once in one process
DEFAULT_CLAIM_TTL = 120.0  # seconds a claim holds before another worker may take the work
DEFAULT_LEASE_TTL = 30.0  # seconds a connector's poll lease holds without a renewal
DEFAULT_COMMENTS_PER_POLL = 50  # linked tasks whose comments one poll reads, round-robin
# First attempts of creates on one scope sent as one request where the platform has a bulk
# create (a backfill's): at most this many, and at most what the platform takes at once.
DEFAULT_BULK_CREATES = 50

# The outbox worker (not in the config: they shape how it works, not what it may do).
DEFAULT_CLAIM_BATCH = 16  # operations claimed per query
DEFAULT_IDLE_WAIT = 1.0  # longest sleep when there is nothing to do
DEFAULT_BACKOFF = 1.0  # first retry delay; doubles per attempt, capped at DEFAULT_MAX_BACKOFF
DEFAULT_MAX_BACKOFF = 300.0
DEFAULT_MAX_ATTEMPTS = 25  # retryable failures before an operation is parked
DEFAULT_UNEXPECTED_ERROR_DELAY = 30.0  # a write that failed in a way nobody foresaw waits this long
# A create or comment that failed without a clear answer (a timeout, a lost connection, a 5xx a
# proxy may have sent while the platform went on) waits at least this long before its retry
# looks for it: a platform may still be applying the request the daemon stopped waiting for,
# and a look too soon finds nothing and writes it twice. A connector's request timeout again.
DEFAULT_LANDING_WAIT = 15.0
DEFAULT_MAX_UNEXPECTED = 3  # such failures before the operation is parked

# The inbox (webhook deliveries).
DEFAULT_INBOX_BATCH = 50  # deliveries claimed and processed together
DEFAULT_INBOX_MAX_ATTEMPTS = 10  # failed processing attempts before a delivery is set aside
DEFAULT_INBOX_FETCHES = 8  # task GETs one inbox batch makes at once

# The store (store.pool_size): PostgreSQL connections kept per replica, as many again may
# overflow. The outbox's writers (DEFAULT_CONCURRENCY) plus the API, polls and the inbox: with
# fewer, a busy replica opened and closed overflow connections all the time (a server process
# forked for each).
DEFAULT_POOL_SIZE = 10

# The most rows one listing of parked operations or failed deliveries returns (the API, the MCP
# tools and `taskbridge outbox|inbox list --limit` alike).
MAX_DEADLETTER_PAGE = 1000

# The daemon.
DEFAULT_STORE_CHECK_INTERVAL = 2.0  # seconds between checks that the store is still the one opened
# A stop's whole budget for work in progress (polls, writes in flight, an inbox batch), under
# the 45 s deploy/ gives a stop before it kills (TimeoutStopSec, stop_grace_period) with room
# for releasing claims and closing; a poll gets at most DEFAULT_JOB_GRACE of it.
DEFAULT_STOP_GRACE = 30.0
DEFAULT_JOB_GRACE = 20.0  # seconds a stop waits for a poll in progress before cancelling it
# How often the event loop's lateness is measured (taskbridge_event_loop_lag_seconds). A sample
# costs up to 90 us of CPU where it wakes an idle loop (7 us in a busy one's turn), so at rest
# about 0.9 ms a second (the idle daemon spends 26 ms), and no stall of 100 ms goes unseen.
DEFAULT_LOOP_LAG_EVERY = 0.1
# A poll that read at least this many tasks hands the memory it freed back to the OS (glibc keeps
# it otherwise: 100,000 tasks on five platforms idled at 516 MB, 348 MB so).
DEFAULT_TRIM_AFTER_TASKS = 1000

# Retention (store.retention): how long finished rows stay before the daemon deletes them, in
# seconds; None keeps them forever. Only finished rows ever go: a pending or claimed delivery or
# operation, and an open conflict, stay whatever their age.
DAY = 86400.0
DEFAULT_RETAIN_INBOX_DONE = 3 * DAY  # processed webhook deliveries (their whole bodies)
DEFAULT_RETAIN_INBOX_FAILED = 30 * DAY  # failed deliveries, for a person to look at (polling caught up)
DEFAULT_RETAIN_OUTBOX_DONE = 14 * DAY  # writes that landed
DEFAULT_RETAIN_OUTBOX_PARKED = None  # parked writes wait for a person's retry or drop: kept
DEFAULT_RETAIN_HISTORY = 90 * DAY  # the audit trail of applied changes
DEFAULT_RETAIN_CONFLICTS_RESOLVED = 90 * DAY  # resolved conflicts (open ones are never deleted)

# The retention job (not in the config).
DEFAULT_PRUNE_INTERVAL = 600.0  # seconds between runs
DEFAULT_PRUNE_FIRST_DELAY = 60.0  # seconds after start-up before the first run
DEFAULT_PRUNE_BATCH = 5000  # rows deleted per transaction (SQLite's write lock is held that long)
DEFAULT_PRUNE_LEASE_TTL = 600.0  # seconds one replica's run holds the "retention" lease at most
