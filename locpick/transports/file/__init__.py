"""``file://`` locations on a shared filesystem mounted here: the mount table, bounded
reachability and confinement, and the system copy (reflink, copy_file_range, sendfile).
"""
