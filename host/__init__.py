"""qnode.host"""
