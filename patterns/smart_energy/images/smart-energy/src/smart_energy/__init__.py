"""The smart-energy IoT-Cloud service: simulated devices at the edge, an MQTT broker, a
collector into the DataLake, an anomaly analyzer that acts back on devices, a notification
receiver and a dashboard. Every part is a small stdlib HTTP server plus paho-mqtt."""
