"""qnode.firmware"""
