"""The channel directory: its YAML files, the models they are checked against, and loading.

`files` reads one YAML file (line index, `${VAR}` interpolation, problems with file:line);
`destinations` holds an EHR interface with its retry and ACK policies; `outbound` loads the
channels and destinations into one immutable `Config`; `inbound` loads `inbound/*.yaml`.
"""
