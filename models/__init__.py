"""Networks only: nn.Modules that do no I/O, parse no flags and import nothing else of the project (weights are
loaded by lipsync.checkpoint, training lives in lipsync.training)."""
