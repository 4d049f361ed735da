"""The contracts every part shares, with no dependency on any other part of memento: the trace format and its rows,
token spans, the eviction policy and schedule, KV accounting, attention-mask forms, precision, errors, intervals."""
