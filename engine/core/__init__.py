"""What every stage stands on: the one error type for bad input, the process group, flat vectors, and guards for
the CPU's allocator and oneDNN. Imports no other room."""
