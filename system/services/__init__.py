"""One component of a run as its own process: `qfleet replay serve`, `qfleet learner run`,
`qfleet actors run` / `qfleet scale`."""
