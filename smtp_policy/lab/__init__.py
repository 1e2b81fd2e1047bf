"""Private MTA labs on loopback for the demo and the tests: a real private Postfix
(:mod:`.postfix`), a real private Sendmail (:mod:`.sendmail`), what they share
(:mod:`.instance`) and a scripted downstream SMTP server (:mod:`.remote`)."""
