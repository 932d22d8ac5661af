"""Models: building (hub, directory or config; dtype, peft, bitsandbytes), reference providers and cache, scoring."""
