"""The shipped SIU templates, installed as package data `engine.hl7_templates`
(see README.md here; `calhl7 init` copies them for a site to adapt)."""
