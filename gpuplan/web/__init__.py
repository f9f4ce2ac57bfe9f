"""The web front end of `gpuplan serve`: a page and a JSON API over the library facade.

It needs the web extra (pip install 'gpuplan[web]'); nothing here is imported by the other commands.
"""
