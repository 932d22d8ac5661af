"""The pure layer: pair data, losses, β controllers, log-probs and the response-only head (torch only)."""
