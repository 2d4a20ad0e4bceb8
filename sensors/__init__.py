"""Sensors, schedules and the jobs they launch; each code location imports the modules it serves."""
