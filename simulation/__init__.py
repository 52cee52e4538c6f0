"""Stand-ins for the outside world, never imported by the platform.

The upstream team that delivers raw files (generate), the live source of driver statistics
(stream_producer), riders who book trips and report their outcomes (traffic), a world whose drivers
suddenly change (drift_scenario) and a visitor walking through the whole platform (demo). They use the
platform's packages the way a client would, and no platform package imports them, so nothing that runs
in production depends on simulated data.
"""
