"""HELIOS: PES V2 flows between the finance software, the parapheur, the TdT and the DGFiP.

- ``pes``: a PES_Aller judged while it streams, by the DGFiP's rules, and its indexed fields;
- ``xades``: each bordereau's XAdES signature verified (core by signxml, then the XAdES and
  Helios layer: references, signing certificate, validity at SigningTime, policy, trust);
- ``acquit``: PES_ACQUIT and PES_NONACQUIT, read element by element;
- ``retour``: PES_Retour, read leniently (its official schema is not whole).

Not wired into a flow yet: the ``helios`` flow comes with the project's PES schema and the
TdT's HELIOS module.
"""
