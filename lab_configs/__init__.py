"""qnode.lab_configs"""
