"""The worker: one per device, keeping it busy with experiments until the daemon drains.

``loop`` holds the cycle (best, propose, claim, run, judge, queue). Around it are objects
that own their own state: ``context`` (what the daemon shares with its workers), ``ledger``
(what the daemon's workers have in flight, have run and have refused), ``claims`` (the
claims one worker holds), ``best`` (the best as one worker sees it), ``proposing``,
``running`` (one run on the device, with its standby), ``replication`` (judging a result
and confirming an improvement), ``confirming`` (reruns of other agents' claims), ``modes``
(pause, finish, resume, halted) and ``status`` (what ``autoresearchd status`` shows).
"""
