"""The A/B harness: MoE (``oracle-council``) against ``master-sword``, offline over held-out sets
(``oracle-council eval ab``) and online from the gateway's request log (``eval ab-online``)."""
