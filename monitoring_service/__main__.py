from monitoring_service.service import main

raise SystemExit(main())
