"""Operations' view of the service: structured logs (`logs`) for Splunk, ELK and the like."""
