"""Stream-through copies: a download into the node cache is servable (and registered in Glance)
while it is still being written. The fill record is the contract between the downloader
(writer) and ``serve`` (reader).
"""
