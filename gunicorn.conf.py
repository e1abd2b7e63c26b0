"""gunicorn settings that follow trainmon's environment; the Procfile holds the rest.

gunicorn reads this file from its working directory, the repository root, however it is
started (honcho, the bench, the tests).
"""

from trainmon.env import env_bool

# Whether X-Forwarded-Proto can make a request count as HTTPS is DJANGO_BEHIND_PROXY's call
# alone. gunicorn's default trusts it from any loopback client, which let a local process
# mark plain-HTTP requests secure even with the variable off.
forwarded_allow_ips = "*" if env_bool("DJANGO_BEHIND_PROXY", False) else ""
