"""Whose an image is and what it is called: the PatientID rules, the S3 key of an image
and the platform's resolver (CardId -> patientGuid). Stands on the base only."""
