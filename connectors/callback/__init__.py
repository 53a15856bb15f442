"""Callback: tell an entity's finance software what became of its document (a signed webhook).

Not in the catalog yet: the ``helios`` flow's last step will be its first user.
"""
