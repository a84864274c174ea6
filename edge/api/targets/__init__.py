"""Port-forward targets: the admin's apps, app resources and databases, and their public
listings for a project's members."""
