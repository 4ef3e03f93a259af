"""The integer coding path: fixed-point arithmetic, integer coding tables and the integer
models (FORMAT.md, "The integer arithmetic"). Everything that shapes a coding table is
defined by the model file and the format, not by the machine."""
