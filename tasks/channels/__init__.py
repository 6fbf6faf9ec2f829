"""Channel adapters (outbox, Twilio SMS/WhatsApp, SendGrid email) and message rendering."""
