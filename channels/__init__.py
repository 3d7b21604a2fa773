"""The example channels (the demo's), installed as package data `engine.example_channels`."""
