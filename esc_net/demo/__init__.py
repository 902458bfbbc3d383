"""The demos behind the ``esc-net-demo`` and ``esc-net-web-demo`` commands (``demo/demo.py`` and ``demo/app.py`` in
a source checkout are thin wrappers around them).

* :mod:`esc_net.demo.cli`: segments image files and writes overlays, label maps and scores.
* :mod:`esc_net.demo.web`: a Gradio page. It imports gradio only when the page is built, so neither this package nor
  that module needs gradio to be imported; the page itself needs the ``web`` extra (``pip install 'esc_net[web]'``).

Importing this package imports neither module.
"""
