"""The log follower: tails files, stdin or the journal, runs the lines through ``maillog`` and
writes events, saves its place, and serves metrics."""
