"""The admin API's configuration records: proxies, routes, services, certificates, resources."""
