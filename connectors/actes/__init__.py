"""ACTES (@CTES, contrôle de légalité): the format, without any network.

- ``natures``: the six natures, their default typology and accepted file types.
- ``sniff``: a file's type from its first bytes.
- ``names``: IDActe and the archive, envelope, message and file names.
- ``classification``: the entity's classification (7-2), stored as JSON.
- ``messages``: every message and envelope as a model, to and from XML.
- ``rules``: business rules, the submission's metadata model and ``check_act``.
- ``envelope``: building and safely reading the tar.gz archives.
- ``validate``: every problem of an archive or message file, located.
"""
