"""qnode.drivers"""
