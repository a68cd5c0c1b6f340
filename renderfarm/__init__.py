"""The `renderfarm` command and the local farm: the layer above every component.

Imports run one way: renderfarm → dashboard, scheduler, worker → shared.
"""
