"""underclouds"""
