"""walq's pure core: record framing, events, the queue state machine, retry maths.

Nothing in this package does IO or reads a clock; time is always an argument.
"""
