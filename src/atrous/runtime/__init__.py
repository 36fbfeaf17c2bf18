"""Where and how code runs: devices and ``torchrun`` process groups, the one mixed-precision
context, and stop signals (preemption). Imports no other wing."""
