"""Play: the web app of `matrixgame play` (:mod:`.app`, a thin WebSocket shell over
:class:`~matrixgame.inference.session.WorldSession`), one player's session with what the page
shows (:mod:`.player`), the message protocol (:mod:`.protocol`) and the page (``static/``)."""
