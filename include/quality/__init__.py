"""Great Expectations: the contract's row rules (data in ``include.contract.rules``) as a suite, the audit that
validates the staged rows with it, and the quality gate after the publish."""
