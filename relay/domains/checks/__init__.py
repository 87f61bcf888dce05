"""One module per record purpose: which questions to ask, and a pure verdict from the findings."""
