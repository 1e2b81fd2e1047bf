"""The mail log as data, pure: lines parsed into records, records tracked into replies and
message summaries, summaries aggregated into reports. No files, no clocks: adapters feed it."""
