"""The HTML trace viewer (`memento view`): any trace file of the project -> one self-contained HTML page.

`items` reads the files into list entries and trace bodies; `page` writes them with the template, CSS and JS of this
folder (package data). The reports of `memento data build` and `memento eval` write a page beside them and link
each sample they list to it (`page.link`).
"""
