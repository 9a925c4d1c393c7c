"""The router: which specialist answers a prompt (design.md sections 1 and 3).

``router.taxonomy`` is the taxonomy as data; ``router.base`` the classifier interface and
registry; ``router.embedding`` (sentence-transformers + scikit-learn) and ``router.gemini``
(google-genai) the two classifiers; ``router.cascade`` combines them by policy behind a decision
cache; ``router.train`` trains the embedding classifier. Every router returns a
``router.decision.RoutingDecision``. Nothing here imports ``gateway``, and nothing heavy (torch,
sentence-transformers, scikit-learn, google-genai) is imported until a classifier is built.
"""
